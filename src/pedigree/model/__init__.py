"""Models as every stage uses them: loading (safetensors only, checked), chat templates and the
tokens they render, what training leaves behind, and the policy chain built from it. Used by
train, export and evals alike.
"""
