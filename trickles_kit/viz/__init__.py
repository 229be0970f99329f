"""Figures (plotly) and live dashboards (ipywidgets) built on the event vocabulary."""
