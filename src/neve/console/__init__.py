"""The web console at ``<control url>/console``: server-rendered pages over the managers, signed in
with a password or a token, showing each user only what their role may see."""
