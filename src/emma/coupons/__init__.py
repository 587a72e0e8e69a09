"""Personal coupons: unique codes per customer and campaign, redemption attributed to the message."""
