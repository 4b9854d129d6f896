"""What to download for each on-disk dataset, and where to put it: the text of a DatasetNotFoundError."""
import os
from typing import Optional

from iiae_jax.errors import DatasetNotFoundError

# What each on-disk dataset needs, in the words a user acts on. `{root}` is the
# folder the loader looked in.
DOWNLOADS = {
    "sketchy": (
        "Download the Sketchy Extended VGG features of the IIAE release "
        "(http://doi.org/10.5281/zenodo.3890097) and unpack them so that "
        "{root}/split1/train_sketch_features.npy exists: each of split1/ and "
        "split2/ holds {{train,test}}_{{sketch,image}}_{{features,paths}}.npy."),
    "mnist_cdcb": (
        "Download MNIST-CDCB (https://github.com/agonzgarc/cross-domain-disen) "
        "and place its pix2pix pair images, as the release ships them, in "
        "{root}/{{train,valid,test}}/."),
    "mnist_cdcb_rebuilt": (
        "Download the four MNIST idx files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; plain or .gz) from "
        "https://storage.googleapis.com/cvdf-datasets/mnist/ into {root}/."),
    "facades": (
        "Download http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/facades.tar.gz "
        "and unpack it so that {root}/{{train,val,test}}/*.jpg exist."),
    "maps": (
        "Download http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/maps.tar.gz "
        "and unpack it so that {root}/{{train,val}}/*.jpg exist (val/ is the test split; "
        "validation uses training pairs 1-800, as the reference does)."),
    "cars": (
        "Download the 3D car renderings (car_NNN_mesh.mat) of the IIAE release "
        "(http://doi.org/10.5281/zenodo.3890097) into {root}/."),
}


def missing_dataset(name: str, root: str, missing: Optional[str] = None) -> DatasetNotFoundError:
  """The error for dataset `name` expected under `root`; `missing` is the absent path."""
  missing = missing or root
  what = "directory" if missing == root else "file"
  how = DOWNLOADS.get(name, "See the dataset's documentation.").format(root=os.fspath(root))
  return DatasetNotFoundError(f"{name}: {what} not found: {missing}. {how}")
