"""The mtcolor web UI: a gradio page over ``MTColorPipeline`` / ``LCoInsPipeline`` (``mtcolor ui``).

Modules:

* :mod:`webui.models` - the model menu, loading, each model's recommended settings;
* :mod:`webui.inputs` - the page's values -> one checked request (readable errors);
* :mod:`webui.received` - which files a request may make the server read (those gradio received);
* :mod:`webui.run` - a request -> one pipeline call -> result, warnings, per-instance adherence table;
* :mod:`webui.overlay` - the label-map overlay and the mask check shown beside it;
* :mod:`webui.examples` - held-out synthetic scenes and the VOC photo as one-click examples;
* :mod:`webui.session` - server state and one method per page action (no gradio);
* :mod:`webui.layout` - the page's components, texts and CSS;
* :mod:`webui.app` - the gradio page's event wiring and errors shown in the page;
* :mod:`webui.server` - launch with a bounded queue, upload limit, loopback default.
"""
