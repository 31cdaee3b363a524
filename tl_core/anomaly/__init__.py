"""Anomaly detection from good images only (PatchCore-style): the "anomaly" task kind.

One idea a module:
    data       the layouts (MVTec AD, good/, a plain folder) ingested safely; test folders read in place
    features   locally aware patch features from mid-level stages of a timm backbone, cached
    memory     greedy coreset subsampling; nearest-neighbour patch distances
    model      the plain torch module: extractor + bank + scorer (predict and export need no fit loop)
    audit      a "good" image scoring far outside the others
    threshold  from good images (an expected false-alarm rate) or the best F1 on defects
    metrics    image AUROC, pixel AUROC, per-defect AUROC
    fit        the kind's fit: features, bank, held-out scores, threshold, run outputs
    evaluate   a finished run on a labelled test folder
    predict    score, verdict and heat map of one image
    export     one ONNX graph verified with onnxruntime, and the standalone program tl_core/use/bundle/predict_anomaly.py
    overlay    a heat map drawn over its image (numpy, Pillow)
    results    a finished run read back for the app (no torch)
    synthetic  realistic synthetic defects on textures, for tests and the bench
    plots      plotly figures for the app
    kind       registers the kind
"""
