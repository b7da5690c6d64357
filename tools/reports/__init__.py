"""Reports drawn from the synthesized templates: the monthly cost estimate (`python -m tools.reports.cost`)
and the architecture diagrams (`python -m tools.reports.diagrams`)."""
