"""The package as a user installs it: ``python -m build`` makes an sdist and a wheel (built from that sdist); the
wheel, installed into a fresh virtual environment, runs from a folder outside the checkout with its shipped
recipes and plans."""

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import dpplat
from dpplat import data

ROOT = Path(dpplat.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    pytest.importorskip("build", reason="the wheel test needs the 'build' package (pip install -e '.[test]')")
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_the_wheel_holds_the_package_recipes_and_plans_and_nothing_else(dist):
    wheels, sdists = list(dist.glob("dpplat-*.whl")), list(dist.glob("dpplat-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert {n.split("/")[0] for n in names} == {"dpplat", f"dpplat-{dpplat.__version__}.dist-info"}
    shipped = {n for n in names if n.startswith(("dpplat/recipes/", "dpplat/plans/"))}
    expected = {f"dpplat/recipes/{p.name}" for p in (ROOT / "models").glob("*.toml")}
    expected |= {f"dpplat/plans/{p.name}" for p in (ROOT / "audits").glob("*.toml")}
    assert shipped == expected
    for name in expected:  # the packaged files are the top-level files, byte for byte
        source = ROOT / ("models" if "/recipes/" in name else "audits") / Path(name).name
        assert zipfile.ZipFile(wheels[0]).read(name) == source.read_bytes()


def test_the_installed_wheel_runs_outside_the_checkout(dist, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    wheel = next(dist.glob("dpplat-*.whl"))
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    # dpplat's dependencies (torch and the rest) come from this environment, read-only, after the venv's own
    site_packages = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    Path(site_packages, "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    user = tmp_path / "elsewhere"
    user.mkdir()
    env = {**os.environ, "DPPLAT_DATA": str(data.default_data_dir()), "DPPLAT_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": ""}
    env.pop("DPPLAT_STORE", None)

    def dpplat_cli(*args):
        done = subprocess.run([str(venv / "bin" / "dpplat"), *args], cwd=user, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    where = subprocess.run([str(python), "-c", "import dpplat; print(dpplat.__file__)"], cwd=user, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(venv)), where  # the installed wheel, not the checkout
    assert dpplat_cli("--version").strip() == f"dpplat {dpplat.__version__}"
    assert "mnist-cnn-eps1" in dpplat_cli("recipes")
    assert "mnist-eps8" in dpplat_cli("audit", "plans")
    out = dpplat_cli("train", "--config", "mnist-cnn-eps1", "--subset", "512", "--epochs", "1", "--batch-size", "128",
                     "--test-subset", "200", "--quiet", "--store", "runs.db")
    assert out.startswith("run 1: accuracy") and (user / "runs.db").is_file()
