-- The demo's database (make demo builds /tmp/capsup-demo/papers.db from it).
-- The researcher may read `papers`; `reviewers` is in the same file, and no
-- capability the policy allows reaches it.
CREATE TABLE papers (id INTEGER PRIMARY KEY, title TEXT NOT NULL, year INTEGER NOT NULL);
INSERT INTO papers (title, year) VALUES
  ('Capability Myths Demolished', 2003),
  ('Robust Composition', 2006),
  ('Capsicum: practical capabilities for UNIX', 2010);
CREATE TABLE reviewers (name TEXT, email TEXT);
INSERT INTO reviewers VALUES ('anonymous', 'reviewer@example.org');
