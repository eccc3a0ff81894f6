-- An email's templates as one occurrence sent them (subject, html, text, sender, the link bases),
-- kept when the delivery has a mirror page: the public page renders a recipient's message again
-- from them and the occurrence's population while that population is kept.
ALTER TABLE campaign.delivery_occurrences ADD COLUMN content jsonb;
