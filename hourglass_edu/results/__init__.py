"""Measured results the course reads from the installed package (notebook 06 on Colab has no
benchmarks/ folder): `frontier.json` is benchmarks/results/frontier.json, copied there by
benchmarks/frontier.py."""
