"""The demo shop behind `emma demo`: a simulated German shop whose data enters through the public paths."""
