"""The client side of the Dask boundary: turns Dask callbacks into core events and core
decisions into `client.submit(..., key=..., workers=[...])`; owns the journal."""
