"""The app tier every server runs, and a local lab that runs it for real.

render.py renders what a server gets (systemd units, nginx config, environment, PostgreSQL
setup); the CDK bootstrap and lab.py both use it, so the lab tests exactly what a server runs.
"""
