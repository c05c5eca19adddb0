"""Streaming and batch top-K (heavy hitters) on Apache Beam."""
import setuptools

setuptools.setup(
    name="topk-heavy-hitters",
    version="0.1.0",
    description="Exact and approximate top-K over 1-minute to 30-day windows "
    "with Apache Beam, Kafka, Parquet/DuckDB and BigQuery.",
    packages=setuptools.find_packages(include=["topk", "topk.*"]),
    python_requires=">=3.10",
    install_requires=[
        "apache-beam==2.77.0",
        "pyarrow>=15",
        "numpy>=1.26",
        "duckdb>=1.1",
    ],
    extras_require={
        "kafka": ["kafka-python>=2.0.2"],
        "sketches": ["datasketches>=5.0"],
        "bigquery": ["google-cloud-bigquery>=3.20"],
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "kafka-python>=2.0.2",
            "datasketches>=5.0",
        ],
    },
    entry_points={"console_scripts": ["topk=topk.cli:main"]},
)
