"""Config: one typed object from TOML, MESH_* environment and flags; errors name the field."""
from __future__ import annotations

from pathlib import Path

import pytest

from mesh.config import ConfigError, load_config


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text('[node]\nrole = "edge"\nhttp_port = 6000\napp = "FromFile"\n'
                    'mongo = "mongodb://db:27017/"\n')
    cfg = load_config(path, env={"MESH_HTTP_PORT": "7000", "MESH_APP": "FromEnv"}, app="FromFlag")
    assert (cfg.role, cfg.http_port, cfg.app) == ("edge", 7000, "FromFlag")


@pytest.mark.parametrize("overrides, field", [
    ({"role": "relay"}, "role"),
    ({"http_port": 70000}, "http_port"),
    ({"app": "bad app"}, "app"),
    ({"segment_target_s": 0}, "segment_target_s"),
    ({"mongo": "http://x"}, "mongo"),
    ({"role": "origin"}, "mongo"),  # origins need a database
    ({"playlist_window": 1}, "playlist_window"),
    ({"node_dead_after_s": 1.0}, "node_dead_after_s"),
    ({"node_forget_after_s": 3.0}, "node_forget_after_s"),  # forgotten before it is dead
    ({"bus_io_threads": 0}, "bus_io_threads"),
    ({"event_loop": "trio"}, "event_loop"),
])
def test_errors_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, env={}, **overrides)
    assert f"'{field}'" in str(err.value)


def test_bad_env_type_and_unknown_file_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'http_port'.*not a valid int"):
        load_config(None, env={"MESH_HTTP_PORT": "eighty"})
    path = tmp_path / "m.toml"
    path.write_text("[node]\nhttp_prot = 1\n")
    with pytest.raises(ConfigError, match="unknown field 'http_prot'"):
        load_config(path, env={})
    path.write_text("[node\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, env={})


def test_origin_without_db_says_how_to_give_one() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, env={}, role="origin")
    assert "--mongo" in str(err.value) and "mesh db" in str(err.value)


SECRET = "0123456789abcdef-cluster"


def test_secrets_from_file_env_and_toml_with_precedence(tmp_path: Path) -> None:
    secret_file = tmp_path / "cluster.secret"
    secret_file.write_text(SECRET + "\n")
    cfg = load_config(None, env={}, cluster_secret_file=str(secret_file))
    assert cfg.cluster_secret == SECRET, "one trailing newline is not part of the secret"
    env = {"MESH_CLUSTER_SECRET": "from-env-0123456789"}
    assert load_config(None, env=env).cluster_secret == "from-env-0123456789"
    # A file given as a flag beats the environment's value; the environment's file beats the TOML's value.
    cfg = load_config(None, env=env, cluster_secret_file=str(secret_file))
    assert cfg.cluster_secret == SECRET
    toml = tmp_path / "m.toml"
    toml.write_text('[node]\ncluster_secret = "from-toml-0123456789"\n')
    assert load_config(toml, env={"MESH_CLUSTER_SECRET_FILE": str(secret_file)}).cluster_secret == SECRET
    assert load_config(toml, env={}).cluster_secret == "from-toml-0123456789"
    toml.write_text('[node]\ncluster_secret = "from-toml-0123456789"\n'
                    f'cluster_secret_file = "{secret_file}"\n')
    with pytest.raises(ConfigError, match="'cluster_secret': give cluster_secret or cluster_secret_file, "
                                          "not both"):
        load_config(toml, env={})


def test_mongo_uri_from_a_file(tmp_path: Path) -> None:
    uri_file = tmp_path / "mongo.uri"
    uri_file.write_text("mongodb://op:pw@db:27017/\n")
    cfg = load_config(None, env={}, role="edge", mongo_file=str(uri_file))
    assert cfg.mongo == "mongodb://op:pw@db:27017/"
    cfg = load_config(None, env={"MESH_MONGO_FILE": str(uri_file)}, role="origin")
    assert cfg.mongo == "mongodb://op:pw@db:27017/"
    with pytest.raises(ConfigError, match="'mongo_file': mongo file .* does not exist"):
        load_config(None, env={}, mongo_file=str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="'mongo_file'.*empty"):
        load_config(None, env={}, mongo_file=str(tmp_path / "empty"))


@pytest.mark.parametrize("overrides, env, field, words", [
    ({"cluster_secret": "short"}, {}, "cluster_secret", "at least 16"),
    ({"cluster_secret": SECRET, "cluster_secret_previous": "old"}, {}, "cluster_secret_previous",
     "at least 16"),
    ({"cluster_secret_previous": SECRET}, {}, "cluster_secret_previous", "rotation"),
    ({"require_play_token": True}, {}, "require_play_token", "needs cluster_secret"),
    ({}, {"MESH_REQUIRE_PUBLISH_TOKEN": "yes"}, "require_publish_token", "needs cluster_secret"),
    ({}, {"MESH_REQUIRE_PLAY_TOKEN": "perhaps"}, "require_play_token", "not a valid bool"),
])
def test_token_settings_are_validated(overrides: dict, env: dict, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, env=env, **overrides)
    assert f"'{field}'" in str(err.value) and words in str(err.value)


def test_token_settings_from_toml_and_env(tmp_path: Path) -> None:
    toml = tmp_path / "m.toml"
    toml.write_text(f'[node]\ncluster_secret = "{SECRET}"\nrequire_play_token = true\n')
    cfg = load_config(toml, env={"MESH_REQUIRE_PUBLISH_TOKEN": "1",
                                 "MESH_CLUSTER_SECRET_PREVIOUS": "previous-0123456789"})
    assert (cfg.require_play_token, cfg.require_publish_token) == (True, True)
    assert cfg.cluster_secret_previous == "previous-0123456789"
    assert load_config(toml, env={"MESH_REQUIRE_PLAY_TOKEN": "off"}).require_play_token is False
    toml.write_text('[node]\nrequire_play_token = "maybe"\n')
    with pytest.raises(ConfigError, match="'require_play_token'"):
        load_config(toml, env={})


def test_secrets_stay_out_of_repr_and_as_dict() -> None:
    from mesh.config import as_dict

    cfg = load_config(None, env={}, role="origin", mongo="mongodb://op:hunter2-pw@db:27017/",
                      cluster_secret=SECRET, publish_token="pub-token-value")
    text = repr(cfg) + str(as_dict(cfg))
    for secret in ("hunter2-pw", SECRET, "pub-token-value"):
        assert secret not in text
    assert as_dict(cfg)["mongo"] == "mongodb://op:***@db:27017/"


def test_mode_config_file_is_written_0640_group_mesh_or_root(tmp_path: Path) -> None:
    import grp
    import os

    from mesh.config import set_config_values

    path = tmp_path / "etc" / "mesh.toml"
    set_config_values(path, {"role": "edge", "mongo": "mongodb://op:pw@db:27017/"})
    st = path.stat()
    try:
        want_gid = grp.getgrnam("mesh").gr_gid
    except KeyError:
        want_gid = 0 if os.geteuid() == 0 else None
    if want_gid is None:
        assert st.st_mode & 0o777 == 0o600
    else:
        assert (st.st_mode & 0o777, st.st_gid) == (0o640, want_gid)
    assert load_config(path, env={}).mongo == "mongodb://op:pw@db:27017/"
    assert [p.name for p in path.parent.iterdir()] == ["mesh.toml"], "no temporary file left behind"


def test_bus_io_threads_from_the_environment() -> None:
    assert load_config(None, env={"MESH_BUS_IO_THREADS": "2"}).bus_io_threads == 2


def test_event_loop_defaults_to_uvloop_and_takes_asyncio() -> None:
    assert load_config(None, env={}).event_loop == "uvloop"
    assert load_config(None, env={"MESH_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"
