"""The operator's pure side: names, settings and builders of the children of a FineTuneJob.

Nothing here talks to a cluster; the Kopf handlers call these and the API.
"""
