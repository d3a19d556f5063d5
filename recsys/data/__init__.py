"""The dataset layer: the canonical dataset directory, its validation and the importers."""

from recsys.data.dataset import Dataset, load_dataset
from recsys.data.importers import IMPORTERS, import_dataset
from recsys.data.validate import check_dataset, validate_dataset

__all__ = ["IMPORTERS", "Dataset", "check_dataset", "import_dataset", "load_dataset",
           "validate_dataset"]
