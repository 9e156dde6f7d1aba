"""Models as every stage uses them: loading (safetensors only, checked), chat templates and the
tokens they render, what training leaves behind, the policy chain built from it, and measure
(the losses, logits and greedy answers of a loaded model). Used by train, export and evals alike.
"""
