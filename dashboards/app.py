"""Entry script for a checkout: ``streamlit run dashboards/app.py [-- --store PATH]``."""

import runpy
from pathlib import Path

import dpplat.dashboard

runpy.run_path(str(Path(dpplat.dashboard.__file__).parent / "app.py"), run_name="__main__")
