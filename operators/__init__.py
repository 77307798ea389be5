"""MONAI Deploy operators of nsn2n-denoise: thin adapters between SDK objects and the holoscan-free
packages ``nsn2n`` (the algorithm), ``dicom_series`` (DICOM in/out) and ``qa_report`` (what a person sees).
One operator a file."""
