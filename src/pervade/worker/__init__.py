"""The worker side of the Dask boundary: what runs inside each Dask worker process."""
