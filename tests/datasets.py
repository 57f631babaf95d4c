"""Where the real input for tests lives: ``../shared/data`` beside the checkout, never copied in.

``HERALDO_DATA_DIR`` points elsewhere.
"""

import os
from pathlib import Path

DATA_DIR = Path(os.environ.get(
    "HERALDO_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
ONLINE_RETAIL_MONTH = DATA_DIR / "online-retail" / "online_retail_2010-12.csv.gz"
ONLINE_RETAIL_FULL = DATA_DIR / "online-retail" / "online_retail.csv.gz"
