"""``repsuite serve``: a web page for trained NLQ and face-swap models.

:mod:`repsuite.serve.services` (inputs checked, answers and files out) and
:mod:`repsuite.serve.catalogue` need no web framework; :mod:`repsuite.serve.app` builds the Gradio page
(``pip install 'repsuite[serve]'``) and :mod:`repsuite.serve.cli` starts it.
"""
