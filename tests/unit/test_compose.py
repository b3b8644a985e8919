"""docker-compose.yml, checked without Docker: against the Compose Specification's JSON
schema (vendored in tests/schemas, see its README) and against what the rest of the
kit expects (ports, listeners, the shared DuckDB volume, Grafana's provisioning, the
Kafka version the Maven path fetches, and the `cluster` profile's three nodes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from marketstream.broker import cluster
from marketstream.settings import PROJECT_ROOT, Settings

ROOT = PROJECT_ROOT
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = ROOT / "tests" / "schemas" / "compose-spec.json"
GRAFANA_PROVISIONING = ROOT / "grafana" / "provisioning"

#: The published port of each service: the defaults the README and Settings document.
DEFAULTS = Settings()
EXPECTED_PORTS = {
    "kafka": DEFAULTS.bootstrap_host_port[1],  # 9092
    "api": DEFAULTS.api_port,  # 8080
    "voila": DEFAULTS.voila_port,  # 8866
    "grafana": 3000,
}
PYTHON_SERVICES = ("pipeline", "api", "voila")
ENV_REF = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")
COMPOSE_DEFAULT = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*):-(.*)\}$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _resolved(value: str) -> str:
    """A compose ``${VAR:-default}`` value as it is when VAR is unset."""
    match = COMPOSE_DEFAULT.match(value)
    return match.group(2) if match else value


def _published(port: object) -> tuple[int, int]:
    """(host port, container port) from a short ``"H:C"`` or long-syntax port entry."""
    if isinstance(port, dict):
        return int(port["published"]), int(port["target"])
    parts = str(port).split("/")[0].split(":")
    return int(parts[-2]), int(parts[-1])


def _volumes(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) for each short or long volume entry."""
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out.append((volume["source"], volume["target"], bool(volume.get("read_only"))))
        else:
            parts = volume.split(":")
            out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def test_compose_file_matches_the_compose_specification(compose):
    schema = json.loads(SCHEMA_FILE.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(compose), key=lambda e: list(e.path))
    messages = [f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors]
    assert not messages, "docker-compose.yml breaks the Compose spec:\n" + "\n".join(messages)


def test_schema_catches_a_broken_file(compose):
    """The vendored schema really constrains services (guards against an empty schema)."""
    schema = json.loads(SCHEMA_FILE.read_text())
    broken = {**compose, "services": {"api": {"image": "x:1", "ports": {"not": "a list"}}}}
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert not validator.is_valid(broken)


def test_the_expected_services_are_there(services):
    assert set(services) >= {"kafka", *PYTHON_SERVICES, "grafana"}


@pytest.mark.parametrize("name", sorted(EXPECTED_PORTS))
def test_ports_are_the_documented_defaults(services, name):
    ports = [_published(p) for p in services[name].get("ports", [])]
    expected = EXPECTED_PORTS[name]
    assert (expected, expected) in ports, f"{name} should publish {expected}:{expected}: {ports}"


def test_images_are_pinned_to_a_tag(services):
    for name, service in services.items():
        image = service.get("image")
        if image is None:
            assert "build" in service, f"{name} has neither image nor build"
            continue
        name_part, _, tag = image.rpartition(":")
        assert name_part and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} is not pinned"


def test_python_services_build_from_the_root_dockerfile(services):
    dockerfile = ROOT / "Dockerfile"
    assert dockerfile.is_file()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile.read_text(), re.M)
    assert (ROOT / ".dockerignore").is_file()
    for name in PYTHON_SERVICES:
        build = services[name]["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        assert (ROOT / context).resolve() == ROOT, f"{name} builds from {context!r}"
        if isinstance(build, dict):
            assert build.get("dockerfile", "Dockerfile") == "Dockerfile"


def test_commands(services):
    assert services["pipeline"]["command"][:2] == ["marketstream", "live"]
    assert {"--no-api", "--no-voila"} <= set(services["pipeline"]["command"])
    assert services["api"]["command"] == ["python", "-m", "marketstream_api.serve"]
    assert services["voila"]["command"][:2] == ["voila", "notebooks/05_live.ipynb"]
    assert "--Voila.ip=0.0.0.0" in services["voila"]["command"]
    assert _env(services["api"])["MARKET_API_HOST"] == "0.0.0.0"


def test_kafka_listeners_serve_the_host_and_the_compose_network(services):
    env = _env(services["kafka"])
    advertised = dict(
        reversed(item.split("://", 1)) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    assert "localhost:9092" in advertised, "host clients need localhost:9092"
    internal = _env(services["pipeline"])["KAFKA_BOOTSTRAP_SERVERS"]
    assert internal in advertised, f"pipeline uses {internal}, advertised: {advertised}"
    assert internal.startswith("kafka:")
    names = {pair.split(":")[0] for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")}
    assert set(advertised.values()) | {env["KAFKA_CONTROLLER_LISTENER_NAMES"]} <= names
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_python_services_share_the_duckdb_volume(compose, services):
    for name in PYTHON_SERVICES:
        env = _env(services[name])
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:19092"
        db_path = env["MARKET_DB_PATH"]
        mounts = {target: source for source, target, _ in _volumes(services[name])}
        owner = [t for t in mounts if db_path.startswith(t.rstrip("/") + "/")]
        assert owner, f"{name}: {db_path} is not on a mounted volume"
        assert mounts[owner[0]] in compose.get("volumes", {}), f"{name}: not a named volume"
    sources = {
        frozenset(s for s, _, _ in _volumes(services[name]) if s in compose["volumes"])
        for name in PYTHON_SERVICES
    }
    assert len(sources) == 1, "pipeline, api and voila must mount the same volume"


def test_dependencies_exist_and_health_conditions_have_healthchecks(services):
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for other, rule in depends.items():
            assert other in services, f"{name} depends on unknown {other}"
            if rule.get("condition") == "service_healthy":
                assert "healthcheck" in services[other], f"{other} has no healthcheck"
    assert services["pipeline"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_grafana_is_provisioned_read_only_with_anonymous_viewers(services):
    grafana = services["grafana"]
    env = _env(grafana)
    mounts = {target: (source, ro) for source, target, ro in _volumes(grafana)}
    assert mounts["/etc/grafana/provisioning"] == ("./grafana/provisioning", True)
    dashboards_dir = env["MARKETSTREAM_DASHBOARDS_DIR"]
    assert mounts[dashboards_dir] == ("./grafana/dashboards", True)
    plugins = env.get("GF_PLUGINS_PREINSTALL_SYNC") or env.get("GF_PLUGINS_PREINSTALL") or ""
    plugins += env.get("GF_INSTALL_PLUGINS", "")
    assert "yesoreyeram-infinity-datasource" in plugins
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert _resolved(env["MARKETSTREAM_API_URL"]) == f"http://api:{EXPECTED_PORTS['api']}"
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        relative = Path(home).relative_to(dashboards_dir)
        assert (ROOT / "grafana" / "dashboards" / relative).is_file()


INFINITY = "yesoreyeram-infinity-datasource"
#: ``GF_PLUGINS_PREINSTALL_SYNC`` entries are ``id`` or ``id@version``; pinned means x.y.z.
PINNED_PLUGIN = re.compile(rf"^{re.escape(INFINITY)}@(\d+\.\d+\.\d+)$")


def test_the_infinity_plugin_is_pinned_to_a_version(services):
    """The image is pinned, so the plugin must be too: an unpinned id installs whatever
    the catalogue has that day. No other variable installs it again unpinned, and the
    README's install command for Grafana outside Docker names the same version."""
    env = _env(services["grafana"])
    entries = [e.strip() for e in env["GF_PLUGINS_PREINSTALL_SYNC"].split(",")]
    [infinity] = [e for e in entries if e.split("@")[0] == INFINITY]
    match = PINNED_PLUGIN.fullmatch(infinity)
    assert match, f"{infinity!r} is not pinned as {INFINITY}@x.y.z"
    for other in ("GF_INSTALL_PLUGINS", "GF_PLUGINS_PREINSTALL"):
        assert INFINITY not in env.get(other, ""), other
    readme = (ROOT / "grafana" / "README.md").read_text()
    assert f"plugins install {INFINITY} {match.group(1)}" in readme


def test_every_variable_the_provisioning_files_use_is_set_for_grafana(services):
    env = _env(services["grafana"])
    used = set()
    for path in GRAFANA_PROVISIONING.rglob("*.yml"):
        text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
        used |= set(ENV_REF.findall(text.replace("$$", "")))
    assert used, "expected the provisioning files to take the API URL from the environment"
    assert used <= set(env), f"not set in the grafana service: {sorted(used - set(env))}"


# --------------------------------------------------------------------------- cluster profile

CLUSTER_NODES = ("kafka-1", "kafka-2", "kafka-3")


def _property(env_name: str) -> str:
    """The apache/kafka image's mapping of a variable to a property:
    ``KAFKA_BROKER_SESSION_TIMEOUT_MS`` -> ``broker.session.timeout.ms``."""
    return env_name.removeprefix("KAFKA_").lower().replace("_", ".")


def test_every_kafka_image_is_the_version_the_maven_path_fetches(services):
    kafka_images = {
        name: s["image"] for name, s in services.items() if "apache/kafka" in s.get("image", "")
    }
    assert set(kafka_images) == {"kafka", *CLUSTER_NODES}
    for name, image in kafka_images.items():
        assert image == f"apache/kafka:{DEFAULTS.kafka_version}", name


def test_the_default_stack_does_not_start_the_cluster(services):
    default = {name for name, s in services.items() if not s.get("profiles")}
    assert default == {"kafka", *PYTHON_SERVICES, "grafana"}
    for name in CLUSTER_NODES:
        assert services[name]["profiles"] == ["cluster"]


def test_the_cluster_profile_is_three_replicating_nodes_of_one_quorum(compose, services):
    envs = {name: _env(services[name]) for name in CLUSTER_NODES}
    assert sorted(int(e["KAFKA_NODE_ID"]) for e in envs.values()) == [1, 2, 3]
    assert len({e["CLUSTER_ID"] for e in envs.values()}) == 1
    assert len(_resolved(envs["kafka-1"]["CLUSTER_ID"])) == 22  # Kafka's id shape
    voters = {e["KAFKA_CONTROLLER_QUORUM_VOTERS"] for e in envs.values()}
    assert voters == {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    published = []
    for name, env in envs.items():
        service = services[name]
        assert service["hostname"] == name
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert "CONTROLLER://:9093" in env["KAFKA_LISTENERS"].split(",")
        advertised = dict(
            reversed(item.split("://", 1)) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
        )
        assert advertised[f"{name}:19092"] == "PLAINTEXT"  # broker to broker, by hostname
        [host] = [a for a, listener in advertised.items() if listener == "HOST"]
        port = int(host.rsplit(":", 1)[1])
        assert host == f"localhost:{port}" and (port, port) in map(_published, service["ports"])
        published.append(port)
        assert "healthcheck" in service
        [(volume, target, _)] = _volumes(service)
        assert volume in compose["volumes"] and target == env["KAFKA_LOG_DIRS"]
        # replicated as `marketstream broker up --nodes 3` is, with its failover timeouts
        for key, value in {
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "3",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "3",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "2",
            "KAFKA_DEFAULT_REPLICATION_FACTOR": "3",
            "KAFKA_MIN_INSYNC_REPLICAS": "2",
        }.items():
            assert env[key] == value, (name, key)
        failover = {_property(k): v for k, v in env.items() if "HEARTBEAT" in k or "SESSION" in k}
        assert failover == cluster.FAILOVER_PROPERTIES
    assert published == [29092, 29093, 29094]
    assert len({_volumes(services[n])[0][0] for n in CLUSTER_NODES}) == 3
