-- One database per service: services never read each other's data.
CREATE DATABASE order_intake;
CREATE DATABASE coi_tracking;
CREATE DATABASE scheduling;
