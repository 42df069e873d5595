"""The Streamlit review app; it reads the run store and nothing else of dpplat."""
