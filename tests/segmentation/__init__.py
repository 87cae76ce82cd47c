"""UnSeg tests; a package so that test_config/test_data/test_method/test_train do not clash with the same names elsewhere."""
