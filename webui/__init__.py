"""The mtcolor web UI: a gradio page over ``MTColorPipeline`` / ``LCoInsPipeline`` (``mtcolor ui``).

Modules:

* :mod:`mtcolor.webui.models` - the model menu, loading, each model's recommended settings;
* :mod:`mtcolor.webui.inputs` - the page's values -> one checked request (readable errors);
* :mod:`mtcolor.webui.received` - which files a request may make the server read (those gradio received);
* :mod:`mtcolor.webui.run` - a request -> one pipeline call -> result, warnings, per-instance adherence table;
* :mod:`mtcolor.webui.overlay` - the label-map overlay and the mask check shown beside it;
* :mod:`mtcolor.webui.examples` - held-out synthetic scenes and the VOC photo as one-click examples;
* :mod:`mtcolor.webui.session` - server state and one method per page action (no gradio);
* :mod:`mtcolor.webui.layout` - the page's components, texts and CSS;
* :mod:`mtcolor.webui.app` - the gradio page's event wiring and errors shown in the page;
* :mod:`mtcolor.webui.server` - launch with a bounded queue, upload limit, loopback default.
"""
