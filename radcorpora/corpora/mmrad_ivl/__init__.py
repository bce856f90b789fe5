"""mmrad-ivl: GEMeX-ThinkVG reasoning traces on MIMIC-CXR-JPG images -> interleaved image-text chains
(full image, then one crop per anatomical group: mediastinal, lung, bone, other) ending in the
study's report, after an LLM summary, self-reflection against the report and cross-audit
(Zhao et al., "Thinking Like a Radiologist", MMRad-IVL-22K)."""
