"""The harness sees what a case must not do: write into HOME, the temporary folder (Ray's sessions
live there) or an input's folder, change a file's mode, print to stdout, or use memory past its
bound -- through the CLI (a forked child) and through the API (this process)."""

from __future__ import annotations

import pytest

from autoshrink.errors import ConfigError

from . import probe
from .harness import refused_by_api, refused_by_cli

PROBE = "tests.hostile.probe:main"


@pytest.mark.parametrize(
    "how, caught",
    [
        ("home", "home-.*/\\*\\*: .cache: absent -> dir"),
        ("tmp", "tmp-.*/\\*\\*: ray: absent -> dir"),
        ("stdout", "stdout not empty on an error: 'progress: 10 %\\\\n'"),
        ("memory", "^peak RSS grew 3\\d\\d MiB, over the 256 MiB bound"),
        ("mode", "input.yaml: file 644 .* -> file 600"),
    ],
)
def test_the_cli_harness_catches(tmp_path, how, caught) -> None:
    (tmp_path / "input.yaml").write_text("x: 1\n")
    (tmp_path / "input.yaml").chmod(0o644)
    with pytest.raises(AssertionError, match=caught):
        refused_by_cli([how], tmp_path, "probe: refused.", entry=PROBE)


def test_the_cli_harness_watches_the_folders_of_its_inputs(tmp_path) -> None:
    elsewhere = tmp_path.parent / f"{tmp_path.name}-inputs"
    elsewhere.mkdir()
    (elsewhere / "space.yaml").write_text("defaults: {}\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    with pytest.raises(AssertionError, match="-inputs: sibling.txt: absent -> file"):
        given = elsewhere / "space.yaml"
        refused_by_cli([f"sibling={given}", str(given)], cwd, "probe", entry=PROBE)


def test_a_well_behaved_refusal_passes(tmp_path) -> None:
    assert refused_by_cli(["none"], tmp_path, "probe: refused.", entry=PROBE) == "autoshrink: error: probe: refused.\n"


@pytest.mark.parametrize(
    "how, caught",
    [
        ("home", "home-.*/\\*\\*: .cache: absent -> dir"),
        ("tmp", "tmp-.*/\\*\\*: ray: absent -> dir"),
        ("stdout", "printed on an error: 'progress: 10 %\\\\n'"),
        ("memory", "^peak RSS grew 3\\d\\d MiB, over the 256 MiB bound"),
    ],
)
def test_the_api_harness_catches(tmp_path, how, caught) -> None:
    with pytest.raises(AssertionError, match=caught):
        refused_by_api(lambda: probe.call(how), tmp_path, ConfigError, "probe: refused.")
