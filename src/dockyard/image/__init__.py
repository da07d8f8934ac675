"""Images: references, pull/push/import/export, OCI layer apply (`layers`) and diff (`layer_diff`)."""  # noqa: E501
