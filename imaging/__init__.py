"""The imaging cloud (DICOM receive, DICOMweb, ImagingStudy). Arrives with the imaging issue."""
