"""timm's own model tests (tests/test_models.py of the installed timm's source distribution) against nondeep's
models, through the registration plugin tests/timm_suite/nondeep_timm_plugin.py. The test code is timm's:
scripts/setup.sh downloads it (pip download --no-binary :all: timm==VERSION) into .third_party/.

A missing timm or source distribution fails here with what to run: timm is in the dev extra, and skipping
would let CI pass without ever running timm's tests.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = Path(__file__).resolve().parent / "timm_suite"


def timm_tests_dir() -> Path:
    try:
        import timm
    except ImportError:
        pytest.fail("timm is not installed: it is in the dev extra, run scripts/setup.sh "
                    "(or pip install -e '.[dev]')")
    tests = ROOT / ".third_party" / f"timm-{timm.__version__}" / "tests"
    if not (tests / "test_models.py").is_file():
        pytest.fail(f"timm {timm.__version__}'s test suite is missing ({tests / 'test_models.py'}): run "
                    "scripts/setup.sh, which downloads timm's source distribution of the installed version")
    return tests


def test_timm_model_suite_passes_on_every_nondeep_family():
    """Every test of timm's test_models.py that applies to parnet_tiny, an ImageNet-form ParNet, wrn_16_1,
    preact_resnet_20, mimic_cnn_8k and resnet18_small_image passes; the not-claimed pairs are skipped with
    their reason (the plugin's NOT_CLAIMED, listed in docs/timm.md) and nothing else is skipped."""
    tests = timm_tests_dir()
    sdist = tests.parent
    env = dict(os.environ, OMP_NUM_THREADS="1",  # small models: one thread each is fastest on a shared CPU
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(PLUGIN_DIR), os.environ.get("PYTHONPATH", "")]))
    env.pop("GITHUB_ACTIONS", None)  # timm's test file changes its exclusions on GitHub; keep the selection fixed
    cmd = [sys.executable, "-m", "pytest", str(tests / "test_models.py"), "-p", "nondeep_timm_plugin",
           "--rootdir", str(sdist), "-c", str(sdist / "pyproject.toml"), "--import-mode=importlib",
           "-p", "no:cacheprovider", "-q", "-rA", "-W", "ignore"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, f"timm's model tests failed on nondeep's models:\n{tail}"
    lines = result.stdout.splitlines()
    skips = [line for line in lines if line.startswith("SKIPPED")]
    assert all("not claimed:" in line for line in skips), "unexpected skips:\n" + "\n".join(skips)
    passed = {line.split("::", 1)[1] for line in lines if line.startswith("PASSED")}
    # The selection really ran: each family passes the tests that apply to it.
    everyone = ["test_model_forward[1-{}]", "test_model_backward[2-{}]", "test_model_forward_torchscript[1-{}]",
                "test_model_forward_fx[1-{}]", "test_model_backward_fx[2-{}]",
                "test_model_forward_fx_torchscript[1-{}]"]
    spatial = ["test_model_default_cfgs[1-{}]"]
    levels = ["test_model_forward_features[1-{}]", "test_model_forward_intermediates[1-{}]",
              "test_model_forward_intermediates_features[1-{}]", "test_prune_intermediate_layers_contract[{}]"]
    expected = {"parnet_tiny": everyone + spatial + levels, "parnet_s_quarter": everyone + spatial + levels,
                "wrn_16_1": everyone + spatial + levels, "preact_resnet_20": everyone + spatial + levels,
                "resnet18_small_image": everyone + spatial, "mimic_cnn_8k": everyone}
    missing = [t.format(m) for m, tests in expected.items() for t in tests if t.format(m) not in passed]
    assert not missing, f"timm tests that did not run or pass: {missing}\n{tail}"
