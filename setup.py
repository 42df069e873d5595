"""Build hook: the wheel ships the top-level recipes (``models/*.toml``) and audit plans (``audits/*.toml``) as
package data in ``dpplat/recipes`` and ``dpplat/plans``, so ``--config NAME`` works after ``pip install``.

The files are copied when the wheel is built, never kept twice in the repository; a checkout (an editable install
included) reads the top-level folders directly (``dpplat.shipped``). Everything else is in ``pyproject.toml``.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = {"models": "recipes", "audits": "plans"}  # top-level folder -> folder inside the package


class BuildWithShippedFiles(build_py):
    def run(self) -> None:
        super().run()
        root = Path(__file__).resolve().parent
        for source, target in SHIPPED.items():
            out = Path(self.build_lib) / "dpplat" / target
            self.mkpath(str(out))
            for path in sorted((root / source).glob("*.toml")):
                self.copy_file(str(path), str(out / path.name))


setup(cmdclass={"build_py": BuildWithShippedFiles})
