"""Fetching Kafka's jars (:mod:`marketstream.broker.jars`): Maven's output parsed, the
JVM's command line, and the fetch itself with stand-in ``java``/``mvn`` scripts."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from marketstream import broker
from marketstream.broker import BrokerError, jars
from marketstream.settings import Settings

MAVEN_LIST = """
The following files have been resolved:
   org.slf4j:slf4j-api:jar:1.7.36:runtime
   org.apache.logging.log4j:log4j-api:jar:2.25.5:runtime
   org.apache.logging.log4j:log4j-core:jar:2.25.5:runtime
"""


def test_dependency_list_is_parsed() -> None:
    assert broker.parse_dependency_list(MAVEN_LIST) == {
        "org.slf4j:slf4j-api": "1.7.36",
        "org.apache.logging.log4j:log4j-api": "2.25.5",
        "org.apache.logging.log4j:log4j-core": "2.25.5",
    }


def test_log_binding_matches_the_slf4j_generation() -> None:
    deps = broker.parse_dependency_list(MAVEN_LIST)
    assert broker.choose_log_binding(deps) == ("log4j-slf4j-impl", "2.25.5")
    deps["org.slf4j:slf4j-api"] = "2.0.17"
    assert broker.choose_log_binding(deps) == ("log4j-slf4j2-impl", "2.25.5")
    assert broker.choose_log_binding({}) == ("log4j-slf4j2-impl", jars.FALLBACK_LOG4J_VERSION)


def test_java_command_leaves_the_wildcard_to_the_jvm(tmp_path: Path) -> None:
    cmd = broker.java_command("java", tmp_path, "kafka.Kafka", ["s.properties"], extra=["-Xmx1m"])
    assert cmd == ["java", "-Xmx1m", "-cp", f"{tmp_path}/*", "kafka.Kafka", "s.properties"]


MAVEN_FAILURE = """\x1b[0m[ERROR] Failed to execute goal on project kafka-runtime: Could not \
resolve dependencies: org.apache.kafka:kafka_2.13:jar:4.99.0 was not found
[ERROR]
[ERROR] To see the full stack trace of the errors, re-run Maven with the -e switch.
[ERROR] [Help 1] http://cwiki.apache.org/confluence/display/MAVEN/DependencyResolutionException
"""


def test_maven_excerpt_keeps_the_cause_only() -> None:
    text = broker.maven_excerpt(MAVEN_FAILURE)
    assert text.startswith("Could not resolve dependencies")
    assert "kafka_2.13:jar:4.99.0 was not found" in text
    assert "-e switch" not in text and "Help 1" not in text
    assert broker.maven_excerpt("no error lines\nstill none") == "no error lines | still none"


# --------------------------------------------------------------------------- failures


def test_missing_java_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="openjdk-17-jre-headless"):
        broker.find_java(search_path=str(tmp_path))  # an empty dir as PATH


def test_missing_maven_names_the_fix(tmp_path: Path) -> None:
    settings = Settings().with_(kafka_home=tmp_path / "home")
    with pytest.raises(BrokerError, match="install Maven"):
        broker.fetch_kafka(settings, search_path=str(tmp_path))
    assert not broker.libs_dir(settings).exists()


def test_a_bad_version_string_never_reaches_maven(tmp_path: Path) -> None:
    settings = Settings().with_(kafka_home=tmp_path, kafka_version="latest</version>")
    with pytest.raises(BrokerError, match="MARKETSTREAM_KAFKA_VERSION"):
        broker.fetch_kafka(settings)


# --------------------------------------------------------------------------- jar fetch


def _script(path: Path, text: str) -> None:
    path.write_text("#!/bin/sh\n" + text, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


#: Stands in for ``mvn``: answers the two goals fetch_kafka runs, as Maven would.
FAKE_MVN = """
for a in "$@"; do
  case "$a" in
    dependency:*) goal=$a ;;
    -DoutputFile=*) out=${a#-DoutputFile=} ;;
    -DoutputDirectory=*) dir=${a#-DoutputDirectory=} ;;
    -Dkafka.version=*) version=${a#-Dkafka.version=} ;;
  esac
done
case "$goal" in
  dependency:list) printf '   org.slf4j:slf4j-api:jar:2.0.17:runtime\n' > "$out" ;;
  dependency:copy-dependencies)
    mkdir -p "$dir" && head -c 3000000 /dev/zero > "$dir/kafka_2.13-$version.jar" ;;
esac
"""


def _fake_tools(tmp_path: Path, java_version: str = "17.0.15") -> str:
    """A directory with stand-in ``java`` and ``mvn``; returned as a search path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _script(bin_dir / "java", f"echo 'openjdk version \"{java_version}\" 2025-04-15' >&2\n")
    _script(bin_dir / "mvn", FAKE_MVN)
    return str(bin_dir)


def test_an_old_java_names_the_version_needed(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="is Java 11 but Kafka 4 needs Java 17"):
        broker.find_java(search_path=_fake_tools(tmp_path, "11.0.2"))


def test_fetch_reports_progress_through_say_and_runs_once(tmp_path: Path) -> None:
    settings = Settings().with_(kafka_home=tmp_path / "home")
    tools = _fake_tools(tmp_path)
    heard: list[str] = []
    libs = broker.fetch_kafka(settings, say=heard.append, search_path=tools)
    assert libs == broker.libs_dir(settings)
    version = settings.kafka_version
    assert (libs / f"kafka_2.13-{version}.jar").is_file()
    marker = (libs / jars.MARKER).read_text(encoding="utf-8")
    assert marker == f"kafka {version}\nlog4j-slf4j2-impl {jars.FALLBACK_LOG4J_VERSION}\n"
    assert heard[0] == f"fetching Kafka {version} jars with Maven (once)..."
    assert heard[1].startswith(f"fetched Kafka {version} jars in ")
    assert heard[1].endswith(f" s (3 MB) into {libs}")
    assert len(heard) == 2
    # the marker says the copy is complete: no second download, no second line
    assert broker.fetch_kafka(settings, say=heard.append, search_path=tools) == libs
    assert len(heard) == 2


def test_fetch_without_say_logs_at_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings().with_(kafka_home=tmp_path / "home")
    with caplog.at_level(logging.INFO, logger="marketstream.broker"):
        broker.fetch_kafka(settings, search_path=_fake_tools(tmp_path))
    lines = [r.getMessage() for r in caplog.records if r.name == "marketstream.broker.jars"]
    assert lines[0].startswith("fetching Kafka") and lines[1].startswith("fetched Kafka")
    assert all(r.levelno == logging.INFO for r in caplog.records)
