"""Volume data: where an episode's image, truth and annotation come from.

- ``sources``: ``PhantomSource``, ``CaseSource`` (Decathlon folders, arrays), ``make_source``.
- ``phantom``: the procedural phantoms (``generate_phantoms``), built from ``phantom_fields``,
  ``phantom_shapes`` and ``phantom_render``.
- ``nifti``: one NIfTI file -- validated reading, intensity normalisation, writing labels back.
- ``decathlon``: Medical Segmentation Decathlon folders (``DecathlonDataset``).
- ``patches``: foreground-biased patch origins, crops, padding.
"""
