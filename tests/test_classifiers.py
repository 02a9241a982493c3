

def test_a_build_that_redraws_its_training_rows_has_a_classifier_cache_of_its_own(tmp_path):
    """mnist-svhn-text's text_start=per_epoch build stores the arrays (so the digest) of the fixed-start build, but its
    classifiers train on redrawn texts: one cache served both, whichever trained first."""
    import json

    from mmbench.data.base import dataset_dir
    from mmbench.metrics.classifiers import cache_dir
    from mmbench.registry import DATASETS

    spec = DATASETS.get("mnist-svhn-text")()
    target = dataset_dir("mnist-svhn-text", "default", tmp_path)
    target.mkdir(parents=True)
    dirs = []
    for start in ("fixed", "per_epoch"):
        (target / "manifest.json").write_text(json.dumps({"dataset": "mnist-svhn-text", "variant": "default",
                                                          "arrays": {}, "text": {"start": start}}))
        dirs.append(cache_dir(spec, "default", 10, tmp_path))
    assert dirs[0] != dirs[1] and dirs[1].name.replace("-redrawn", "") == dirs[0].name
