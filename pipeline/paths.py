"""Artifact locations, relative to the repository root (the stages' working directory).

dvc.yaml names the same paths; keep the two in step.
"""

from pathlib import Path

DATA = Path("data")
RAW = DATA / "raw"  # downloaded or generated source files + manifest.json
MANIFEST = RAW / "manifest.json"
PARSE_CACHE = DATA / "cache" / "parsed"  # parsed raw files, keyed by checksum (resume)
PREPARED = DATA / "prepared"  # canonical tables
INTERACTIONS = PREPARED / "interactions.parquet"
ITEMS = PREPARED / "items.parquet"
USERS = PREPARED / "users.parquet"
SPLIT = DATA / "split"
ROLES = SPLIT / "roles.parquet"
METRICS = Path("metrics")
DATA_STATS = METRICS / "data_stats.json"
SPLIT_STATS = METRICS / "split.json"
FEATURES = DATA / "features"
ITEM_FEATURES = FEATURES / "items.parquet"  # item feature store (item_features stage)
USER_PROFILES = FEATURES / "users"  # LLM user profiles, Parquet parts (user_profiles stage)
MODELS = DATA / "models"  # trained base models and cold-start methods (torch state dicts)
TRAIN_TIMES = METRICS / "train.json"  # seconds the base models and each method trained
COLD_START = METRICS / "cold_start.json"  # test metrics of every method
VALID = METRICS / "cold_start_valid.json"  # the same on validation cold users
EVALUATION = DATA / "evaluation"
VALID_USERS = EVALUATION / "valid_users.parquet"  # per-user validation ndcg@10, for score auto
PLOTS = Path("plots")
