-- The serial of the SVID an agent renewed from. The agent API accepts it besides `serial` until the
-- agent first presents `serial` (a renewal whose reply was lost); NULL once it has, and after an
-- attestation. Rows from before this column get NULL: only their current serial is accepted.
ALTER TABLE agents ADD COLUMN previous_serial TEXT;
