"""Operations on a whole tenant across tenancy and the queue: migrations, export and
import, backup, and moves between stores and isolation modes."""
