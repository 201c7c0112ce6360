"""Physical constants, SI units (metres, seconds, radians unless named)."""

SPEED_OF_LIGHT_M_PER_S = 299_792_458.0
EARTH_EQUATORIAL_RADIUS_M = 6_378_137.0  # WGS84
WGS84_FLATTENING = 1.0 / 298.257223563
# WGS72, the frame SGP4's element sets are defined in
WGS72_MU_M3_PER_S2 = 398_600.8e9
WGS72_EARTH_RADIUS_M = 6_378_135.0
J2_WGS72 = 0.001082616
SECONDS_PER_DAY = 86_400.0
