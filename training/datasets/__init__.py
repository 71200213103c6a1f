"""Training cases (phantoms, COCA, mask folders, npz/case caches), patient-level splits, slice datasets."""
