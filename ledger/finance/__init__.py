"""The month close: each market's royalty pool divided among rights holders by stream share."""
