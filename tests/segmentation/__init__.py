"""UnSeg tests: a package, so that its test_config, test_data, test_method and test_train
do not clash with the modules of the same name in tests/pipeline, tests/eval and tests/core."""
