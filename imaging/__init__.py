"""The imaging cloud: DICOM receive (DIMSE and DICOMweb), object storage, metadata index,
FHIR ImagingStudy, rendered previews, de-identification.

Built so far: ``store`` (content-addressed object storage, atomic writes), ``dataset`` (reading
a received instance: validation, truncation, character sets, the indexed attributes and the
metadata JSON) and ``deidentify`` (PS3.15 basic profile). The receivers, the index, DICOMweb
and ImagingStudy arrive with the rest of the imaging issue. Like ``adapters/``, this package
calls the hub's services; the hub never imports it.
"""
