-- PostgreSQL partitions sightings by month of arrival in 0018; SQLite keeps one table
-- (one file, one writer). What both share: an index for bounding boxes (dashboard map,
-- export bbox), a range of latitudes with the longitudes checked in the index.
CREATE INDEX sightings_lat_lon ON sightings (latitude, longitude);
