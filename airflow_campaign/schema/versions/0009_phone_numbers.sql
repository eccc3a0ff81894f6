-- Phone numbers as the SMS deliveries read them: each distinct raw value and region, normalised
-- once to E.164 by libphonenumber (phonenumbers), or the reason it is not a number. A delivery
-- parses only the values no earlier delivery has seen; region '' reads international numbers only.
CREATE TABLE campaign.phone_numbers (
    raw           text NOT NULL,
    region        text NOT NULL DEFAULT '',
    e164          text,
    reason        text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (raw, region),
    CHECK ((e164 IS NULL) <> (reason IS NULL))
);
