"""nsn2n-denoise application package (``python app -i IN -o OUT``)."""
