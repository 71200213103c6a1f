"""Everything a series leaves behind: JSON report (+ schema), CSV ledger, DICOM SR/SEG, key image."""
