"""dpplat's dashboard: ``streamlit run`` this file, or ``dpplat dashboard``."""

from pathlib import Path

import streamlit as st

PAGES = Path(__file__).parent / "pages"


def main() -> None:
    st.set_page_config(page_title="dpplat", layout="wide")
    navigation = st.navigation([
        st.Page(PAGES / "runs.py", title="Runs", default=True),
        st.Page(PAGES / "run.py", title="Run"),
        st.Page(PAGES / "privacy_audit.py", title="Privacy audit"),
        st.Page(PAGES / "defense_audit.py", title="Defense audit"),
        st.Page(PAGES / "privacy_card.py", title="Privacy card"),
    ])
    navigation.run()


main()
